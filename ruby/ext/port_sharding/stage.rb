# frozen_string_literal: true

require "fileutils"

module PortSharding
  # Copies what the extension needs out of the repository into ext/port_sharding/stage/, at `gem build`
  # time. A gem may only contain files under its own folder (a path like ../core builds the .gem but
  # `gem install` refuses it), so the .gem carries its own small Cargo workspace:
  #
  #   stage/Cargo.toml   the repository's workspace manifest with `members` trimmed to what is staged
  #   stage/Cargo.lock   the repository's lock file, so the same crate versions are built
  #   stage/core/        the engine crate            (each crate: Cargo.toml + src/ only)
  #   stage/cli/         the command line crate, which the gem's `port-sharding` executable runs
  #   stage/bench/       the load generator crate, when the repository has one (the CLI links it)
  #   stage/ext/         this extension crate
  module Stage
    MEMBERS = /^members\s*=\s*\[[^\]]*\]/m
    DEFAULT_MEMBERS = /^default-members\s*=\s*\[[^\]]*\]/m
    CRATES = %w[core cli bench].freeze

    def self.run(repo:, ext:, dest:)
      FileUtils.rm_rf(dest)
      FileUtils.mkdir_p(dest)
      crates = CRATES.select { |name| File.file?(File.join(repo, name, "Cargo.toml")) }
      crates.each { |name| copy_tree(File.join(repo, name), File.join(dest, name), only: %w[Cargo.toml src]) }
      copy_tree(ext, File.join(dest, "ext"), only: %w[Cargo.toml src])
      members = crates + ["ext"]
      File.write(File.join(dest, "Cargo.toml"), manifest(File.read(File.join(repo, "Cargo.toml")), members))
      FileUtils.cp(File.join(repo, "Cargo.lock"), dest)
      dest
    end

    def self.manifest(text, members)
      raise "port_sharding: no `members = [...]` in the workspace Cargo.toml" unless text.match?(MEMBERS)

      text = text.sub(MEMBERS, "members = #{members.inspect}")
      text = text.match?(DEFAULT_MEMBERS) ? text.sub(DEFAULT_MEMBERS, 'default-members = ["ext"]') : text
      "# Staged by ruby/ext/port_sharding/stage.rb from the repository's Cargo.toml (members trimmed).\n#{text}"
    end

    # Copies the files under `from` (all, or the top-level entries named in `only`), skipping build output.
    def self.copy_tree(from, to, only: nil)
      Dir.glob("**/*", File::FNM_DOTMATCH, base: from).sort.each do |rel|
        next if rel.split("/").any? { |part| %w[target . ..].include?(part) }
        next if only && !only.include?(rel.split("/").first)

        src = File.join(from, rel)
        next unless File.file?(src)

        FileUtils.mkdir_p(File.dirname(File.join(to, rel)))
        FileUtils.cp(src, File.join(to, rel))
      end
    end
  end
end
