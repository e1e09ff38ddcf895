//! The test_vmalloc runner, the legacy baseline allocator and shared benchmark code.
