"""State-dict key maps between mmtune (Meta names) and Hugging Face / Meta / LLaMA2-Accessory layouts."""
