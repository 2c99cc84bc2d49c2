"""Device meshes, logical-to-mesh sharding rules and parallel execution schedules."""
