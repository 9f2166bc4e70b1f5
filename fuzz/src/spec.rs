//! Properties every accepted [`AppSpec`] must have, whichever door it came in by.

use pmcluster_proto::v1 as pb;
use pmcluster_spec::config::{Format, parse_apps, to_config};
use pmcluster_spec::wire::new_spec_from_wire;
use pmcluster_spec::{AppSpec, MESSAGE_MAX_BYTES, SpecError};
use prost::Message;

/// A refusal's text is bounded whatever the input (it travels in a gRPC header): the message
/// and field are cut, the app name echoed short.
pub fn check_error(e: &SpecError) {
    let text = e.to_string();
    // The message, the field (cut to 128) and the app's echo (64 characters of up to 4 bytes,
    // escaped) with their separators.
    let bound = MESSAGE_MAX_BYTES + 128 + 64 * 12 + 64;
    assert!(
        text.len() <= bound,
        "a {} byte error message: {}",
        text.len(),
        pmcluster_spec::cut(&text, 300)
    );
}

/// `spec` reads back unchanged from its wire form (also through protobuf bytes, as it travels)
/// and, when it would be accepted as new input, from its config form (`to_config`, which
/// `pmcluster reload --set` edits and sends back).
///
/// A spec read leniently (`AppSpec::try_from`: one a coordinator already holds, or an agent's
/// saved assignment) may carry a constraint value that new input refuses, because it was stored
/// before values were checked. Its config form must then be refused with a short message naming
/// the field, not read back as something else.
pub fn check_spec(spec: &AppSpec) {
    let wire = pb::AppSpec::from(spec);
    match AppSpec::try_from(wire.clone()) {
        Ok(back) => assert_eq!(&back, spec, "spec -> wire -> spec changed it"),
        Err(e) => panic!("a valid spec's wire form is refused: {e}\nspec: {spec:?}"),
    }
    let bytes = wire.encode_to_vec();
    match pb::AppSpec::decode(bytes.as_slice()) {
        Ok(decoded) => assert_eq!(decoded, wire, "protobuf bytes read back otherwise"),
        Err(e) => panic!("a spec's own encoding does not decode: {e}"),
    }
    let as_new = new_spec_from_wire(wire);
    let text = to_config(spec).to_string();
    match (parse_apps(&text, Format::Json), as_new) {
        (Ok(specs), Ok(_)) => assert_eq!(
            specs.as_slice(),
            std::slice::from_ref(spec),
            "spec -> config -> spec changed it\nconfig: {text}"
        ),
        (Err(e), Ok(_)) => panic!("a valid spec's config form is refused: {e}\nconfig: {text}"),
        (Ok(specs), Err(held)) => panic!(
            "a spec new input refuses ({held}) reads from its config form as {specs:?}\nconfig: {text}"
        ),
        (Err(e), Err(_)) => {
            check_error(&e);
            assert!(
                e.to_string().contains("placement."),
                "a held spec's config form is refused for another reason: {e}\nconfig: {text}"
            );
        }
    }
}
