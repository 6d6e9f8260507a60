"""The model id the benchmark tests' fake OpenAI server (conftest.py) lists. Its own module, with a name no other
test folder uses: ``from conftest import ...`` finds whichever folder's conftest was imported first when several
test folders run in one pytest call."""
MODEL_ID = "fake-model"
