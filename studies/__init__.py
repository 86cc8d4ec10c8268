"""Study definitions shipped with the package (YAML files)."""
