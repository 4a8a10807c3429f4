//! `port-sharding serve --port 1234`: the command line over the [`port_sharding`] engine (see
//! [`port_sharding_cli`]).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(port_sharding_cli::main(
        std::env::args_os(),
        port_sharding::Host::Cli,
    ))
}
