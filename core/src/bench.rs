//! Load generator behind `port-sharding bench` (placeholder: being written, see issue 6).

/// Arguments of `port-sharding bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Port of the server to load.
    #[arg(long, short, default_value_t = 1234)]
    pub port: u16,
}

/// Runs `port-sharding bench`.
pub fn main(_args: BenchArgs) -> std::process::ExitCode {
    eprintln!("port-sharding bench: not built yet");
    std::process::ExitCode::from(2)
}
