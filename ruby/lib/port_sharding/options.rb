# frozen_string_literal: true

module PortSharding
  # Checks the keywords of `serve` and `Server.new` and turns them into the Hash the native extension
  # reads. Types are checked here, so the ArgumentError names the keyword; ranges are checked by the
  # engine, whose ConfigError names it too.
  module Options
    DEFAULT_PORT = 1234
    MODES = %i[echo once hello].freeze

    # Unknown keywords raise Ruby's own ArgumentError ("unknown keyword: :wrokers").
    def self.build(port = DEFAULT_PORT, host: "0.0.0.0", workers: nil, mode: :echo, backlog: 1024,
                   drain_timeout: 30.0, max_connections: 10_000, idle_timeout: nil,
                   takeover: false, migrate: false)
      {
        port: integer(:port, port),
        host: string(:host, host),
        workers: workers.nil? ? nil : integer(:workers, workers),
        mode: mode(mode),
        backlog: integer(:backlog, backlog),
        drain_timeout: seconds(:drain_timeout, drain_timeout),
        max_connections: integer(:max_connections, max_connections),
        idle_timeout: idle_timeout.nil? ? nil : seconds(:idle_timeout, idle_timeout),
        takeover: boolean(:takeover, takeover),
        migrate: boolean(:migrate, migrate)
      }
    end

    def self.integer(name, value)
      return value if value.is_a?(Integer)

      raise ConfigError.new("invalid #{name}: expected an Integer, got #{value.inspect}", name)
    end

    def self.string(name, value)
      return value.to_s if value.is_a?(String) || value.is_a?(Symbol)

      raise ConfigError.new("invalid #{name}: expected a String, got #{value.inspect}", name)
    end

    def self.seconds(name, value)
      return value.to_f if value.is_a?(Numeric) && value.real? && value.to_f.finite? && value.positive?

      raise ConfigError.new("invalid #{name}: expected a number of seconds > 0, got #{value.inspect}", name)
    end

    def self.boolean(name, value)
      return value if value == true || value == false

      raise ConfigError.new("invalid #{name}: expected true or false, got #{value.inspect}", name)
    end

    def self.mode(value)
      return value.to_s if (value.is_a?(Symbol) || value.is_a?(String)) && MODES.include?(value.to_sym)

      raise ConfigError.new("invalid mode: expected one of #{MODES.map(&:inspect).join(', ')}, got #{value.inspect}",
                            :mode)
    end
    private_class_method :integer, :string, :seconds, :boolean, :mode
  end
end
