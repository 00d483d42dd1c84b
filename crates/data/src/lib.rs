pub use burnish_core as core;
