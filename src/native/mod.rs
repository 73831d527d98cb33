//! The `_parakernel` extension module (multi-phase init, per-interpreter GIL).
