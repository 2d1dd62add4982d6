"""The built-in ichbench plugins, loaded through the `ichbench` entry-point group like any other."""
