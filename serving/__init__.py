"""CFG Explorer on Ray Serve: a pool of denoiser replicas behind the Gradio front end (issue 21)."""
