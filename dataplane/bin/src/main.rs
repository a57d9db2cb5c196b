//! The tm-dataplane process: packet path over TUN and UDP
fn main() {}
