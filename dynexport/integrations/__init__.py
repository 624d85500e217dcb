"""Optional integrations: loaders that turn another framework's model description (an
OpenMMLab config, ...) into a dynexport Script. Each needs its own extra and is imported
only when used; `import dynexport` imports none of them."""
