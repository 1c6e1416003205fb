"""Third-party-style route stores loaded by real cfproxy processes in the tests
(`--storage-backend tests.stores.file_stores:InterfaceStore`)."""
