"""Generating text with a registered version, Ray-free: the building blocks both the serving
engines (``serve_apps``) and the evaluation job (``jobs.evaluate``) use.

- :mod:`core.generation.sampling`: per-request sampling settings, OpenAI's penalties.
- :mod:`core.generation.loading`: a registry version fetched into a local cache and built.
- :mod:`core.generation.quantize`: a quantized version of a registry version registered;
  :mod:`core.generation.int8` is the int8-dynamic format and its CPU kernels.
- :mod:`core.generation.decoder`: many prompts decoded together, token by token.
- :mod:`core.generation.engine`: what a generator replica needs from an engine.
"""
