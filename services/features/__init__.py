"""The features service: emits rows of the diabetes data with their true labels."""
