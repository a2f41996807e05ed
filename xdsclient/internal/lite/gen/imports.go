package main

// The packages whose descriptors the generator reads, registered by import.
import _ "mesh/xdsclient/internal/lite/gen/envoytypes"
