"""Built-in hardware profiles (YAML) and their tables; loaded through ``hwsbs.profiles``."""
