# frozen_string_literal: true

# `gem build port_sharding.gemspec && gem install --local ./port_sharding-<version>.gem` compiles the
# Rust extension with cargo (no rb_sys gem, no gems from the network): it needs Ruby's headers (ruby-dev),
# libclang (libclang-dev) and cargo. As a Bundler path gem, `rake compile` builds it instead (README).

repo = File.expand_path("..", __dir__)
if !defined?(Bundler) && File.file?(File.join(repo, "Cargo.toml")) && File.directory?(File.join(repo, "core"))
  # `gem build` from the repository: stage the Cargo workspace into the gem (see ext/port_sharding/stage.rb).
  # Not when Bundler reads this file for a path gem: it builds nothing, and runs this on every `bundle exec`.
  require_relative "ext/port_sharding/stage"
  PortSharding::Stage.run(repo: repo, ext: File.join(__dir__, "ext/port_sharding"),
                          dest: File.join(__dir__, "ext/port_sharding/stage"))
end
# The version lives in one place: `[workspace.package] version` of the Cargo workspace (staged with the gem).
version = [File.join(repo, "Cargo.toml"), File.join(__dir__, "ext/port_sharding/stage/Cargo.toml")]
          .select { |path| File.file?(path) }
          .map { |path| File.read(path)[/^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"/m, 1] }
          .compact.first or raise "port_sharding: no [workspace.package] version in the Cargo workspace"

Gem::Specification.new do |spec|
  spec.name = "port_sharding"
  spec.version = version
  spec.summary = "Many processes serving one TCP port with SO_REUSEPORT (Linux), on a Rust engine"
  spec.description = <<~TEXT
    PortSharding.serve(1234) serves a TCP port from one forked worker process per CPU, each with its own
    SO_REUSEPORT listener so the kernel spreads connections; graceful drain on Ctrl-C, status/stop through
    a control socket, zero-loss takeover between servers (Ruby, Python or the CLI) on the same port.
  TEXT
  spec.authors = ["port-sharding developers"]
  spec.license = "MIT"
  spec.homepage = "https://example.invalid/port-sharding"
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir.chdir(__dir__) do
    Dir["README.md", "lib/**/*.rb", "exe/*", "ext/port_sharding/extconf.rb", "ext/port_sharding/stage/**/*"]
      .select { |f| File.file?(f) }
      .reject { |f| f.split("/").include?("target") }
  end
  spec.bindir = "exe"
  spec.executables = ["port-sharding"]
  spec.extensions = ["ext/port_sharding/extconf.rb"]
  spec.require_paths = ["lib"]
end
