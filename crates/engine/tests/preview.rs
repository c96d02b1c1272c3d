//! The `Preview` plan step: set right after the new slots are eligible, cleared after the
//! switch, and cleared by the undo when the deploy rolls back.

mod support;

use nonstop_ports::NodeName;
use support::Service;

#[tokio::test(start_paused = true)]
async fn preview_is_set_before_the_switch_and_cleared_after_it_or_by_the_undo() {
    for strategy in ["blue-green", "canary"] {
        let svc = Service::with(strategy, false, "preview = { header = \"X-Try\" }");
        let mut engine = svc.engine(|_, _| {});
        svc.deploy(&mut engine, "1").await.unwrap();
        assert!(
            svc.world.lock().previews.is_empty(),
            "the first deploy has no preview"
        );

        let steps = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let seen = steps.clone();
        let mut engine = svc.engine(move |_, step| seen.borrow_mut().push(step.to_string()));
        svc.deploy(&mut engine, "2").await.unwrap();
        let steps = steps.borrow().clone();
        let at = |needle: &str| {
            steps
                .iter()
                .position(|s| s.contains(needle))
                .unwrap_or_else(|| panic!("{strategy}: no `{needle}` in {steps:#?}"))
        };
        assert!(
            at("wait until the balancer") < at("targeted preview: requests"),
            "{steps:#?}"
        );
        assert!(
            at("targeted preview: requests") < at("switch atomically"),
            "{steps:#?}"
        );
        assert!(
            at("switch atomically") < at("clear the targeted preview"),
            "{steps:#?}"
        );
        {
            let w = svc.world.lock();
            assert_eq!(
                w.previews,
                vec![Some(vec![NodeName::from("n2")]), None],
                "{strategy}"
            );
            assert_eq!(w.preview, None);
        }

        // A release that dies right after its preview is set: the undo clears the preview.
        svc.world.lock().previews.clear();
        let world = svc.world.clone();
        let mut engine = svc.engine(move |_, step| {
            if step.starts_with("targeted preview") {
                world.lock().fail_next_mutation = true;
            }
        });
        svc.deploy(&mut engine, "3").await.unwrap_err();
        let w = svc.world.lock();
        assert_eq!(w.preview, None, "{strategy}: {:?}", w.previews);
        assert_eq!(
            w.previews.first(),
            Some(&Some(vec![NodeName::from("n1")])),
            "{strategy}"
        );
        assert_eq!(w.previews.last(), Some(&None), "{strategy}");
    }
}
