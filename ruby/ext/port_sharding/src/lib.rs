//! The Ruby extension `port_sharding/port_sharding.so`: a thin layer over the [`port_sharding`] engine.
//!
//! Ruby code (`lib/port_sharding.rb`) declares the module and the exception classes; this crate converts
//! values ([`settings`], records as JSON), errors ([`errors`]) and the GVL ([`nogvl`]), and nothing else: the
//! engine checks settings, runs servers and the command line. [`module`] is `PortSharding`'s native
//! functions, [`server`] is `PortSharding::Server`.

mod errors;
mod function;
mod module;
mod nogvl;
mod server;
mod settings;

/// Ruby's entry point. In a private module because the macro adds an undocumented public
/// `extern "C" fn Init_port_sharding`, which the `missing_docs` lint would flag at the crate root.
mod entry {
    use magnus::{Error, Ruby};

    #[magnus::init(name = "port_sharding")]
    fn init(ruby: &Ruby) -> Result<(), Error> {
        let namespace = ruby.define_module("PortSharding")?;
        super::module::init(namespace)?;
        super::server::init(ruby, namespace)?;
        super::function::init(ruby, namespace)?;
        Ok(())
    }
}
