//! The Ruby extension `port_sharding/port_sharding.so`: a thin layer over the [`port_sharding`] engine.
//!
//! Ruby code (`lib/port_sharding.rb`) declares the module, the exception classes and every keyword
//! argument; this crate converts values, errors and the GVL, and nothing else. One file per Ruby class:
//! [`module`] is `PortSharding`'s native functions, [`server`] is `PortSharding::Server`.

mod convert;
mod errors;
mod module;
mod nogvl;
mod options;
mod server;

/// Ruby's entry point. In a private module because the macro adds an undocumented public
/// `extern "C" fn Init_port_sharding`, which the `missing_docs` lint would flag at the crate root.
mod entry {
    use magnus::{Error, Ruby};

    #[magnus::init(name = "port_sharding")]
    fn init(ruby: &Ruby) -> Result<(), Error> {
        let namespace = ruby.define_module("PortSharding")?;
        super::module::init(ruby, namespace)?;
        super::server::init(ruby, namespace)?;
        Ok(())
    }
}
