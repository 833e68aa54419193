"""The shipped search spaces, one YAML per arch (installed as `mgc_ray.search_spaces`)."""
