"""Quantizers and methods written on onebit's public API alone, as a user would in their own
script; import a module to register what it holds (``import onebit.contrib.larq``)."""
