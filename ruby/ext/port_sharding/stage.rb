# frozen_string_literal: true

require "fileutils"

module PortSharding
  # Copies what the extension needs out of the repository into ext/port_sharding/stage/, at `gem build`
  # time. A gem may only contain files under its own folder (a path like ../core builds the .gem but
  # `gem install` refuses it), so the .gem carries its own small Cargo workspace:
  #
  #   stage/Cargo.toml   the repository's workspace manifest with `members` trimmed to core + ext
  #   stage/Cargo.lock   the repository's lock file, so the same crate versions are built
  #   stage/core/        the engine crate
  #   stage/ext/         this extension crate (Cargo.toml + src/)
  module Stage
    MEMBERS = /^members\s*=\s*\[[^\]]*\]/m
    DEFAULT_MEMBERS = /^default-members\s*=\s*\[[^\]]*\]/m

    def self.run(repo:, ext:, dest:)
      FileUtils.rm_rf(dest)
      FileUtils.mkdir_p(dest)
      File.write(File.join(dest, "Cargo.toml"), manifest(File.read(File.join(repo, "Cargo.toml"))))
      FileUtils.cp(File.join(repo, "Cargo.lock"), dest)
      copy_tree(File.join(repo, "core"), File.join(dest, "core"))
      copy_tree(ext, File.join(dest, "ext"), only: %w[Cargo.toml src])
      dest
    end

    def self.manifest(text)
      raise "port_sharding: no `members = [...]` in the workspace Cargo.toml" unless text.match?(MEMBERS)

      text = text.sub(MEMBERS, 'members = ["core", "ext"]')
      text = text.match?(DEFAULT_MEMBERS) ? text.sub(DEFAULT_MEMBERS, 'default-members = ["ext"]') : text
      "# Staged by ruby/port_sharding.gemspec from the repository's Cargo.toml (members trimmed).\n#{text}"
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
