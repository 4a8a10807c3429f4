# frozen_string_literal: true

module PortSharding
  # The version lives in one place: `[workspace.package] version` of the Cargo workspace, which the crate,
  # the CLI, the Python package and this gem share. In the repository that is ../Cargo.toml; in an
  # installed gem it is the copy staged into ext/port_sharding/stage/ when the gem was built.
  module CargoVersion
    CANDIDATES = [
      File.expand_path("../../../Cargo.toml", __dir__),                 # repository checkout
      File.expand_path("../../ext/port_sharding/stage/Cargo.toml", __dir__) # installed gem
    ].freeze

    # The `version` key of the `[workspace.package]` table of the first workspace manifest found.
    def self.read(candidates = CANDIDATES)
      candidates.each do |path|
        next unless File.file?(path)

        table = File.read(path)[/^\[workspace\.package\]\s*\n(.*?)(?=^\[|\z)/m, 1]
        version = table && table[/^version\s*=\s*"([^"]+)"/, 1]
        return version if version
      end
      raise LoadError, "port_sharding: no [workspace.package] version in #{candidates.join(' or ')}"
    end
  end

  VERSION = CargoVersion.read.freeze
end
