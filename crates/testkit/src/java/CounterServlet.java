package nonstop.testapp;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;
import jakarta.servlet.http.HttpSession;
import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.util.concurrent.atomic.AtomicLong;
import javax.management.ObjectName;

/**
 * The test app: /health answers "UP"; / and /count count per session and answer
 * "version=V route=R count=N"; /slow?ms=N sleeps N ms first; /logout ends the session. The version comes from the
 * context-param `version`, the route from the Engine's jvmRoute. With the context-param `errorRate` (0.0-1.0) that
 * share of / and /count answers 500 "version=V route=R error=injected", deterministically (the Nth request fails
 * when floor(N x rate) grows), so a test's bound is stable; /health stays 200.
 */
public class CounterServlet extends HttpServlet {
    private static final long serialVersionUID = 1L;
    private String version = "?";
    private String route = "?";
    private double errorRate = 0.0;
    private final AtomicLong counted = new AtomicLong();

    @Override
    public void init() {
        String v = getServletContext().getInitParameter("version");
        if (v != null) {
            version = v;
        }
        String rate = getServletContext().getInitParameter("errorRate");
        if (rate != null) {
            errorRate = Double.parseDouble(rate);
        }
        try {
            Object r = ManagementFactory.getPlatformMBeanServer()
                    .getAttribute(new ObjectName("Catalina:type=Engine"), "jvmRoute");
            if (r != null) {
                route = r.toString();
            }
        } catch (Exception e) {
            route = System.getProperty("jvmRoute", "?");
        }
    }

    @Override
    protected void doGet(HttpServletRequest req, HttpServletResponse resp) throws IOException {
        String path = req.getPathInfo() == null ? "/" : req.getPathInfo();
        resp.setContentType("text/plain");
        resp.setCharacterEncoding("UTF-8");
        resp.setHeader("Cache-Control", "no-store");
        switch (path) {
            case "/health":
                resp.getWriter().print("UP");
                return;
            case "/slow":
                long ms = 1000;
                String q = req.getParameter("ms");
                if (q != null) {
                    ms = Long.parseLong(q);
                }
                try {
                    Thread.sleep(ms);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
                resp.getWriter().print("version=" + version + " route=" + route + " slept=" + ms);
                return;
            case "/logout":
                HttpSession ending = req.getSession(false);
                if (ending != null) {
                    ending.invalidate();
                }
                resp.getWriter().print("version=" + version + " route=" + route + " logged-out");
                return;
            case "/":
            case "/count":
                if (injectedError()) {
                    resp.setStatus(500);
                    resp.getWriter().print("version=" + version + " route=" + route + " error=injected");
                    return;
                }
                HttpSession session = req.getSession(true);
                int count;
                synchronized (session) {
                    Integer old = (Integer) session.getAttribute("count");
                    count = old == null ? 1 : old + 1;
                    // A Serializable value set on every change: what a cluster's DeltaManager replicates.
                    session.setAttribute("count", count);
                }
                resp.getWriter().print("version=" + version + " route=" + route + " count=" + count);
                return;
            default:
                resp.sendError(404);
        }
    }

    /** Whether this request of / or /count is one of the `errorRate` share that fails. */
    private boolean injectedError() {
        if (errorRate <= 0.0) {
            return false;
        }
        long n = counted.incrementAndGet();
        return Math.floor(n * errorRate) > Math.floor((n - 1) * errorRate);
    }
}
