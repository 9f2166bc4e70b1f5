//! Scale commands: a count set or changed (`+N`, `-N`), and an apply that keeps a count a scale
//! set meanwhile.

use super::*;

/// `scale web +2` / `-1` change the count the coordinator has when it takes them, and a change
/// below 0 is refused naming what is there.
#[tokio::test]
async fn a_relative_scale_changes_the_current_count() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    let by = |change| c.scale_app(ScaleCmd::by("web", change)?);
    assert_eq!(
        by(3)?,
        Scaled {
            previous: 2,
            instances: 5
        }
    );
    assert_eq!(
        by(-1)?,
        Scaled {
            previous: 5,
            instances: 4
        }
    );
    assert_eq!(
        by(0)?,
        Scaled {
            previous: 4,
            instances: 4
        }
    );
    match by(-5) {
        Err(ControlError::InvalidArgument(m)) => {
            assert!(m.contains("web has 4; -5 would leave -1"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.get_app("web")?.spec.instances, 4);
    Ok(())
}

#[tokio::test]
async fn an_apply_can_keep_the_count_a_scale_set_meanwhile() -> Result<()> {
    let c = Control::open(Arc::new(MemoryStore::default()), ControlConfig::default())?;
    let _a = c.attach(&register("a"), None)?;
    c.apply(web(2))?;
    // A client read the spec at 2 instances, then someone scaled to 5...
    let mut read = web(2);
    c.scale("web", 5)?;
    // ...and the client applies its edit: the count it read does not undo the scale.
    read.env.insert("X".into(), "1".into());
    let (app, _, changed, _) = c.apply_keeping(read.clone(), true)?;
    assert!(changed);
    assert_eq!(app.spec.instances, 5);
    // Without keep_instances the spec's count is the count.
    let (app, ..) = c.apply_keeping(read, false)?;
    assert_eq!(app.spec.instances, 2);
    // A new app takes its spec's count either way.
    let mut other = web(3);
    other.name = "other".into();
    other.port = PortSpec::Range(4300, 4399);
    let (app, created, ..) = c.apply_keeping(other, true)?;
    assert!(created);
    assert_eq!(app.spec.instances, 3);
    Ok(())
}
