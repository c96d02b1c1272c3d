package nonstop.testapp;

import jakarta.servlet.ServletContextEvent;
import jakarta.servlet.ServletContextListener;

/** In the Failing variant only: the context cannot start. */
public class FailingListener implements ServletContextListener {
    @Override
    public void contextInitialized(ServletContextEvent event) {
        throw new IllegalStateException("nonstop test app: this build fails at startup on purpose");
    }
}
