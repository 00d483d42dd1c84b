pub use burnish_data as data;
