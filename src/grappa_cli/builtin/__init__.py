"""The paper's variants and grappa's own commands, registered as ordinary plugins."""
