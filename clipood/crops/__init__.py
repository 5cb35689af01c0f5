"""Crops (KR-NFT section 3.4): sampling and selection (`sampling`), the crop-feature cache (`cache`) and the
training crops of a run (`train_data`)."""
