"""Small panels the Segment and Fine-tune widgets are made of; each subscribes to a status object."""
