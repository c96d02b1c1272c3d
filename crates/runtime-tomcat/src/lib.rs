//! The Tomcat runtime: a WAR into a CATALINA_BASE and a restart of that Tomcat.
//! (Being written; see docs/runtimes/tomcat.md.)
