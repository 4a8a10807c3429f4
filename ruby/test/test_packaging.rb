# frozen_string_literal: true

require_relative "test_helper"

# The library `gem install` installed is the `dist` build: no debug info, at most 4 MiB (it was 12.2 MB
# with it). Read from the ELF section headers of the file Ruby loaded, so a build that lost `--profile dist`
# (ext/port_sharding/extconf.rb) or the profile's `strip` (workspace Cargo.toml) fails here.
class TestPackaging < Minitest::Test
  include PortShardingTest

  LIMIT = 4 * 1024 * 1024

  def setup
    super
    skip "PORT_SHARDING_RUBY_LIB tests a development build (rake compile), not the installed gem's" if DEV_LIB
  end

  def test_the_installed_library_carries_no_debug_info
    names = section_names(extension)
    assert_includes names, ".text" # the reader found the real section table
    debug = names.grep(/\A\.z?debug_/)
    assert_empty debug, "#{extension} was built with debug info (#{debug.join(', ')}): not the `dist` profile"
  end

  def test_the_installed_library_is_at_most_4_mib
    size = File.size(extension)
    assert_operator size, :<=, LIMIT, "#{extension} is #{size} bytes, over the #{LIMIT}-byte (4 MiB) limit"
  end

  private

  def extension
    suffix = "/port_sharding/port_sharding.#{RbConfig::CONFIG['DLEXT']}"
    $LOADED_FEATURES.find { |path| path.end_with?(suffix) } or flunk "no #{suffix} among the loaded features"
  end

  # The section names of a 64-bit little-endian ELF file (what Linux x86-64 and aarch64 build).
  def section_names(path)
    data = File.binread(path)
    assert_equal "\x7FELF\x02\x01".b, data[0, 6], "#{path} is not a 64-bit little-endian ELF file"
    shoff = data.unpack1("Q<", offset: 0x28)
    shentsize, shnum, shstrndx = data.unpack("S<3", offset: 0x3A)
    header = lambda do |index|
      base = shoff + (index * shentsize)
      [data.unpack1("L<", offset: base), *data.unpack("Q<2", offset: base + 0x18)]
    end
    _, strtab, strsize = header.call(shstrndx)
    names = data[strtab, strsize]
    (0...shnum).map { |i| names[header.call(i).first..].unpack1("Z*") }
  end
end
