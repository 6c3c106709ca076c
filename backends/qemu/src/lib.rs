//! QEMU backend.
