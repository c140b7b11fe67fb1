#[flumen::service]
trait Sync_ {
    fn get(&self, key: String) -> String;
}

fn main() {}
