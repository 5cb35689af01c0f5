"""Run settings: typed schemas (`settings`), composing them with YAML files and `key=value` overrides (`compose`,
strict YAML in `yaml`), and the checks made before any work (`checks`)."""
