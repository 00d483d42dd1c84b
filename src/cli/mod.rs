pub mod data;
pub mod export;
pub mod model;
pub mod train;
