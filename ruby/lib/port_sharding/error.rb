# frozen_string_literal: true

module PortSharding
  # Base class of the gem's own failures (and of a bug in the engine, which never panics into Ruby); the
  # native extension raises these subclasses by name.
  # Two kinds of failure keep Ruby's standard classes instead, so plain Ruby code handles them:
  # - a bad argument is a ConfigError, an ArgumentError (Ruby has no multiple inheritance, and
  #   `rescue ArgumentError` is the idiom), whose #keyword names the argument;
  # - an OS error is a SystemCallError with its errno: a taken port is `Errno::EADDRINUSE`, a port below
  #   1024 without privilege `Errno::EACCES`.
  class Error < StandardError; end

  # A setting is out of range or unknown, e.g. `workers: 0` or `wrokers: 2`; #keyword names it.
  class ConfigError < ArgumentError
    # The keyword at fault, as a Symbol (:workers, :mode, …), or nil.
    attr_reader :keyword

    def initialize(message = nil, keyword = nil)
      super(message)
      @keyword = keyword&.to_sym
    end
  end

  # A setting got a value of the wrong type, e.g. `port: "80"` (strings are not parsed).
  class SettingTypeError < ConfigError; end

  # `host:` is not an IPv4/IPv6 literal or "localhost" (names are not resolved).
  class AddressError < Error; end

  # `status`/`stop` found no live server on that port (no control socket answers).
  class NotRunningError < Error; end

  # `takeover: true` could not adopt the running server's sockets; the old server keeps serving.
  class TakeoverError < Error; end

  # A control socket answered something unexpected, or its directory is unusable (or a server did not
  # become ready).
  class ControlError < Error; end

  # A Server was asked for something its state does not allow: started twice, or waited for before it
  # started.
  class InvalidStateError < Error; end
end
