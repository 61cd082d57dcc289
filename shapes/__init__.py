"""The procedural shapes world behind the built-in ``paik-shapes`` model: the world and its
ground truth (:mod:`paik.shapes.world`), training (:mod:`paik.shapes.train`), the word probe
and the faithfulness benchmark. Generation (:mod:`paik.capture`) knows nothing of it."""
