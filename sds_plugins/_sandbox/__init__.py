"""Local imitation of NHS England's SDS FHIR API; the public face is ``sds_plugins.sandbox``."""
