pub use burnish_core as core;
pub use burnish_data as data;
pub use burnish_trainers as trainers;
