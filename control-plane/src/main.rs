//! Placeholder for the Portcullis control plane, built in issue 3.

fn main() {
    eprintln!("portcullis-control-plane: not built yet (issue 3); only the verifier ships now");
    std::process::exit(64);
}
