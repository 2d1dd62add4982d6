"""A plugin module that cannot be imported, as when a dependency is missing."""

raise ImportError("ichbench_broken needs the library 'not_installed_anywhere'")
