"""SynthesizeMe persona induction: split, bootstrap reasoning, synthesis, exemplar selection, jobs."""
