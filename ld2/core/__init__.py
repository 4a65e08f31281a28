"""Pure domain code: no I/O, no Redis. Everything else in ld2 builds on these modules."""
