"""Pushing to the Hugging Face Hub: stages, the final model and run cards (`push`), and in the background during a run
(`pusher`)."""
