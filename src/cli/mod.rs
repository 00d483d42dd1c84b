pub mod ablate;
pub mod data;
pub mod eval;
pub mod export;
pub mod model;
pub mod score;
pub mod showcase;
pub mod train;
