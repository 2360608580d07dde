"""Built-in models: their spec, networks, training loop, preprocessing and metrics."""

#: The modules holding the built-in models' code: a stage that trains or runs them puts
#: their sources in its code fingerprint.
BUILTIN_MODULES = ("raypipe.models.builtin", "raypipe.models.builtin_spec", "raypipe.models.networks")
