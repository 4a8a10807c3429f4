//! The `port-sharding` command line, written once: the binary, `python -m port_sharding` and the gem's
//! executable all call [`main`].
